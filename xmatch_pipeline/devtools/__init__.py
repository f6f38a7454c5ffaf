"""Development and test tools, apart from the flow: the local services (devstack), the CDS test
server, alert tools and the demo.
"""
