"""The kopf operator that turns TrainJobs into pods."""
