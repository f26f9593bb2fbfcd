"""Writers that turn model weights into GGUF files that llama.cpp loads."""
