"""The portal's and the staff dashboard's views, one module per page or group of pages."""
