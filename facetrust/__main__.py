from facetrust._entry import main

main()
