"""Template tasks as Hugging Face datasets: tokenizers, symbol alphabets, the renderer
and the Hub layout on disk."""
