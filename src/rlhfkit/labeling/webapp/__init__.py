"""The labelling web app: database (db), labelling rules (labels), agreement, admin stats, export, FastAPI app."""
