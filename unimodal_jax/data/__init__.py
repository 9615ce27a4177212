"""Image data records, tokenizers and the Grain pipeline that packs documents into training rows."""
