"""The latents behind a result's numbers: the latents file saved beside it, the token windows recovered
from the evaluation's own sequences, readable token text, the groups of latents each health finding
points at, and the one view of them that the markdown, terminal and HTML reports render."""
