"""Reports on a build: `afgen show`, memory traffic of a plan, and counting MLX graphs."""
