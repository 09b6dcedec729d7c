"""Input images: data URLs, guarded URL fetching, and format/size/integrity checks."""
