"""Pictures of what a trained model does: criss-cross attention maps of chosen pixels."""

from ccnet_jax.visualize.attention import (
    PixelAttention,
    attention_figure,
    image_attention,
    model_attention,
    pixel_attention,
    save_attention,
    spread,
)

__all__ = [
    "PixelAttention",
    "attention_figure",
    "image_attention",
    "model_attention",
    "pixel_attention",
    "save_attention",
    "spread",
]
