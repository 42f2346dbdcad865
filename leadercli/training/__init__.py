"""One recipe per method (teacher, student, distill): setup → train → save → cleanup."""
