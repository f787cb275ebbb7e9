"""The statistics that turn evaluation tables into intervals and verdicts; nothing here trains,
generates or scores."""
