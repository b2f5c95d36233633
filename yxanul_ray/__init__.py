"""yxanul-ray: Ray-native curriculum pretraining for small GPT models.

Importing the package imports nothing heavy (no torch, no Ray, no Transformer Engine): the CLI
validates a config before any of those load.
"""

__version__ = "0.1.0"
