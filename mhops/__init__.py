"""mhops: operations automation for the mobile-hospital patient platform.

Layers, dependencies pointing one way: ``tasks.py`` -> capability modules
(``inspect``, ``schedule``) -> shared services (``inventory``, ``runner``,
``remote``, ``records``, ``state``) -> pure leaves (``redact``, ``thresholds``,
``errors``) that import nothing of the project.
"""

__version__ = "0.1.0"
