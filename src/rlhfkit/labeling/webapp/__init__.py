"""The labelling web app: database (db), labelling rules (labels), agreement, admin stats, export, FastAPI app
(app, with its routes by concern in auth_routes, label_routes and admin_routes, sharing deps)."""
