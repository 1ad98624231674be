"""RASFT: problem selection and routing, solvability weights, rollouts, reference log-probs, the refresh source."""
