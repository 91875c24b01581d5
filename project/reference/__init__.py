"""The plain-PyTorch reference loop and its command line."""
