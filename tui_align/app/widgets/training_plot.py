"""The Train screen's plot: the loss at every step, and the held-out evaluations on it; in PPO's phase,
the reward of the sampled answers and their KL to the reference instead (PPO's loss says nothing a
user can read: it is a clipped surrogate, near zero whether or not the answers improve).

A sparkline shows a trend but no numbers, and no held-out points: whether held-out loss turned up while
training loss still fell (overfitting, the reason a run stops early) is exactly what a user needs to see.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot


class TrainingPlot(PlotextPlot):
    """Training loss per step (a line) and held-out loss and accuracy at each eval (points)."""

    def show(self, steps: list[int], losses: list[float], evals: list[dict],
             ppo_points: list[tuple[int, float, float]] = ()) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("step")
        if ppo_points:
            self._show_ppo(plt, ppo_points, evals)
            return
        if steps:
            plt.plot(steps, losses, label="loss", marker="braille")
        held = [e for e in evals if isinstance(e.get("loss"), (int, float))]
        if held:
            plt.scatter([e["step"] for e in held], [e["loss"] for e in held], label="held-out loss", marker="o")
        accuracy = [e for e in evals if isinstance(e.get("accuracy"), (int, float))]
        if accuracy:
            plt.scatter([e["step"] for e in accuracy], [e["accuracy"] for e in accuracy],
                        label="held-out accuracy", marker="x", yside="right")
        self.refresh()

    def _show_ppo(self, plt, points: list[tuple[int, float, float]], evals: list[dict]) -> None:
        steps = [p[0] for p in points]
        plt.plot(steps, [p[1] for p in points], label="reward (sampled)", marker="braille")
        plt.plot(steps, [p[2] for p in points], label="KL", marker="braille", yside="right")
        held = [e for e in evals if e.get("phase") == "policy" and isinstance(e.get("sampled_reward"), (int, float))]
        if held:
            plt.scatter([e["step"] for e in held], [e["sampled_reward"] for e in held],
                        label="held-out reward", marker="o")
        self.refresh()
