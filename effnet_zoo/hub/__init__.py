"""The Hugging Face Hub side, by concern: reaching it (``access``), the ``config.json`` a model folder carries
(``config``), and writing and publishing model folders (``folders``). Downloads go through timm (``hf-hub:``) and
uploads through huggingface_hub's ``HfApi``; nothing here talks HTTP itself."""

from .folders import HubPublishError, push_to_hub, save_pretrained

__all__ = ["HubPublishError", "push_to_hub", "save_pretrained"]
