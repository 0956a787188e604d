"""Small reusable modules shared by the models."""
