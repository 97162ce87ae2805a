"""LoRA training from preference pairs: DPO, ORPO, and reward model + PPO, in a child process.

Pairs in, an adapter out: the entry point (tui_align/train_command.py) loads the pairs and resolves the
data folder; nothing in here reads the store, the file formats or the data folder's layout.

  runner.py       one run, start to finish: placement, encoding, the method's train entry, the run folder
  methods.py      the table of methods (how to add one: its docstring); job.py what a train entry receives
  loop.py         the one training loop, step schedules, accumulated passes, progress
  preference.py   the loop of a loss over chosen and rejected log-probs; dpo.py and orpo.py are such losses
  reward.py       the reward model (a second adapter and a scalar head)
  ppo.py          RLHF's three phases; rollouts.py samples and scores, warm_start.py is its SFT phase
  losses.py       every loss and PPO's reward shaping, pure functions of tensors
  forward.py      log-probs of a batch in one forward; head_logps.py the LM head without its logits
  data.py         chat-template encoding and batches; split.py the held-out split (torch-free)
  placement.py    device and precision; lora.py the adapters; failures.py errors as one-line events
  run_folder.py   the run folder's files; events.py the event stream; config.py the settings
  rules.py        names, exit codes and limits the app shares (torch-free); synthetic.py a trait data set
"""
