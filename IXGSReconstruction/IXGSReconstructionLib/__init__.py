"""IXGS Reconstruction's own parts: its parameter node, the Logic (behind the interface the
widget is given), the widget, and what needs no GUI (scan assembly from image files, POINTS_JSON
files)."""
