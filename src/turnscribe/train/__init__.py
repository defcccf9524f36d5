"""Training recipe of the model card as code: vocabulary extension, data preparation (lhotse), fine-tuning.

Needs the `[train]` extra (lhotse, accelerate; bitsandbytes for 8-bit AdamW on CUDA).
"""
