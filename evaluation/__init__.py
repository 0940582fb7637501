"""Evaluation of optimized prompts on the test split, through lm-evaluation-harness."""
