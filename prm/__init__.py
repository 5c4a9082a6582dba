"""Process reward models: steps, data, grading, models and PRM training (the base layer)."""
