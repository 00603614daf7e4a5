"""Classical baselines scored by the same code as the networks: ANTs SyN and SyNCC."""
