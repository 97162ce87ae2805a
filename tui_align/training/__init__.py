"""LoRA training from preference pairs: DPO, ORPO, and reward model + PPO, in a child process."""
