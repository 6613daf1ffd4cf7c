"""Training data: reading user images safely (``images``), face detection (``faces``) and the face-crop dataset
builder (``crop``, CLI ``python -m trainers crop``)."""
