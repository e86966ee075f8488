"""dpdk-mode end-to-end tests (a package so its conftest does not displace tests/e2e/conftest.py
in a mixed run: tests/e2e modules do `from conftest import ...`)."""
