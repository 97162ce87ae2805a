"""Trained adapters: finding them, converting them for llama.cpp, exporting them."""
