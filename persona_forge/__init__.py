"""persona_forge: persona-grounded conversational training data, and proof that it is good."""

__version__ = "0.1.0"
