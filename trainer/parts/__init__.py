"""The trainable parts a run is made of: models (the built-in CNN and any timm model) and losses."""
