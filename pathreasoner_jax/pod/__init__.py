"""Pod scale without a pod: deviceless compilation of the training and rollout steps for
TPU topologies (libtpu), XLA's own per-chip memory and cost figures, a roofline step-time
estimate, and a mesh planner (`pathreasoner compile` / `pathreasoner plan`)."""
