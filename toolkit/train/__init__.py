"""`rtk finetune` and `rtk inspect`: configuration, recipes, model, loop, session."""
