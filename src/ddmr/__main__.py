from ddmr.cli import console

console()
