"""Manual review (人工核验): cases, their decisions and notes, and operator roles."""
