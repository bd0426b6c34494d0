"""Interoperability with other formats (LLaDA Hugging Face safetensors)."""
