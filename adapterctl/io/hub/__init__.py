"""The Hugging Face Hub, without torch: ids and revisions, downloads into the cache, uploads, error translation, and the one place a BASE or ADAPTER argument becomes a local folder."""
