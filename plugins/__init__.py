"""fusepot's built-in plugins. Each subpackage is registered through the `fusepot` entry-point
group in pyproject.toml, exactly as a third-party package would register its own."""
