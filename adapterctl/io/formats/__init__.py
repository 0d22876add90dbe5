"""Foreign adapter formats without torch: llama.cpp's GGUF (header reader and adapter files) and MLX-LM adapter folders."""
