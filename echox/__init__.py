"""echox: build EchoX echo-training data and train speech-to-speech LLMs."""

__version__ = "0.1.0"
