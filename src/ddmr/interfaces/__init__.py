"""Interfaces of DDMR to workflow engines.

:mod:`ddmr.interfaces.nipype` holds the Nipype interfaces ``Register`` and ``Apply``
(``pip install "ddmr[nipype]"``). Importing this package imports nothing of Nipype;
import the submodule for them (``from ddmr.interfaces.nipype import Register``).
"""
