"""The loss names that records and analysis share, apart from the losses themselves: `analysis/` reads
them from here, so rebuilding the results from committed tables imports no torch (losses.py needs it)."""

# The loss type an online-RL run (train_dpo/rloo.py) records: no pair loss, but under its reverse-KL
# penalty the optimum's implied reward is beta * log u, so its preference probability is a sigmoid run's.
ONLINE_LOSS = "rloo"
# Losses whose margin is a Bradley-Terry log-odds: they have a preference probability, hence an ECE.
PROBABILISTIC_LOSSES = ("sigmoid", ONLINE_LOSS)
