"""pyinfra deploys, one per component (the only code besides runner.py that imports pyinfra)."""
