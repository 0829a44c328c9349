"""Fuzzing harnesses (atheris) and the hostile fixtures of RELIABILITY.md, built in code (`hostile.py`)."""
