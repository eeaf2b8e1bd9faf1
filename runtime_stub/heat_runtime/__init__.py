"""The HEAT runner runtime."""
