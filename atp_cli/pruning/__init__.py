"""Pruning strategies: pure numpy functions of the attention a module sees (no ctypes, no llama.cpp)."""
