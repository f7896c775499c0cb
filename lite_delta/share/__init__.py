"""A finished run onto the Hugging Face Hub: the adapter, the GGUFs, the merged model and the pairs, each in
its own repo with a card the Hub reads (base_model, licence, model-index)."""

from lite_delta.share.push import PARTS, PushPlan, Upload, parse_parts, plan_lines, plan_push, push, upload

__all__ = ["PARTS", "PushPlan", "Upload", "parse_parts", "plan_lines", "plan_push", "push", "upload"]
