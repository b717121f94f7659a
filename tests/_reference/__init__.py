"""Independent reference implementations the tests compare the package against (no package code inside)."""
