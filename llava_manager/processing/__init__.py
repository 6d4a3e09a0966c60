"""Turning images, video frames and chats into model inputs: processors, chat templates, prompts, image decoding."""
