# Stands in for Ray where a program must run without it (the GPU machine has no Ray): importing it fails.
raise ImportError("ray is not available here (tests/no_ray): this program must not import it")
