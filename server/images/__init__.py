"""The images API: generations, edits, variations, and content for URL responses."""
