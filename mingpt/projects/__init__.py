"""Runnable projects built only on the public API: `mingpt adder`, `mingpt chargpt`."""
